#include "native_proxy.h"

#include <arpa/inet.h>
#include <netinet/in.h>

#include <string>
#include <vector>

#include "../core/ps_addr.h"
#include "../core/ps_error.h"

namespace portsplice {

namespace {

// A Node-style system error: message "bind EADDRINUSE: Address already in use
// 127.0.0.1:80", and code, errno, syscall, address and port properties.
Napi::Error SystemError(Napi::Env env, const ps::Error& error, const std::string& host, int port) {
  std::string message =
      std::string(error.syscall) + " " + ps::errno_name(error.code) + ": " + ps::errno_text(error.code);
  if (!host.empty()) message += " " + host + ":" + std::to_string(port);
  Napi::Error e = Napi::Error::New(env, message);
  e.Set("code", Napi::String::New(env, ps::errno_name(error.code)));
  e.Set("errno", Napi::Number::New(env, error.code));
  e.Set("syscall", Napi::String::New(env, error.syscall));
  if (!host.empty()) {
    e.Set("address", Napi::String::New(env, host));
    e.Set("port", Napi::Number::New(env, port));
  }
  return e;
}

bool ThrowTypeError(Napi::Env env, const char* message) {
  Napi::TypeError::New(env, message).ThrowAsJavaScriptException();
  return false;
}

}  // namespace

Napi::Function NativeProxy::Define(Napi::Env env) {
  return DefineClass(env, "NativeProxy",
                     {
                         InstanceMethod<&NativeProxy::Add>("add"),
                         InstanceMethod<&NativeProxy::StopListening>("stopListening"),
                         InstanceMethod<&NativeProxy::Remove>("remove"),
                         InstanceMethod<&NativeProxy::Close>("close"),
                         InstanceMethod<&NativeProxy::Stats>("stats"),
                         InstanceMethod<&NativeProxy::Threads>("threads"),
                         InstanceMethod<&NativeProxy::Ref>("ref"),
                         InstanceMethod<&NativeProxy::Unref>("unref"),
                         InstanceMethod<&NativeProxy::WatchEvents>("watchEvents"),
                         InstanceMethod<&NativeProxy::TakeEvents>("takeEvents"),
                     });
}

NativeProxy::NativeProxy(const Napi::CallbackInfo& info) : Napi::ObjectWrap<NativeProxy>(info) {
  Napi::Env env = info.Env();
  bool auto_threads = info.Length() > 0 && info[0].IsString() && info[0].As<Napi::String>().Utf8Value() == "auto";
  if (info.Length() < 2 || !(info[0].IsNumber() || auto_threads) || !info[1].IsFunction()) {
    ThrowTypeError(env, "NativeProxy(threads | 'auto', onComplete, pipeSize?, maxPipes?)");
    return;
  }
  ps::EngineOptions options;
  options.threads = auto_threads ? ps::kAutoThreads : info[0].As<Napi::Number>().Int32Value();
  // A number below 1 is refused by start() with EINVAL, not taken as kAutoThreads.
  if (options.threads < 1 && !auto_threads) options.threads = -1;
  if (info.Length() > 2 && info[2].IsNumber()) options.pipe_size = info[2].As<Napi::Number>().Uint32Value();
  if (info.Length() > 3 && info[3].IsNumber()) options.max_pipes = info[3].As<Napi::Number>().Uint32Value();

  completions_ = Completions::New(env, info[1].As<Napi::Function>(), "portsplice completions", 0, 1, this);
  // Workers post completions from their threads; the queue is unbounded, so a worker
  // never blocks on JavaScript.
  Completions tsfn = completions_;
  ps::Error started = engine_.start(options, [tsfn](uint64_t request, int result) {
    // ShutdownNow's stop: nobody waits for it, nothing to deliver.
    if (request == ps::kNoRequest) return;
    auto* completion = new Completion{request, result};
    if (tsfn.NonBlockingCall(completion) != napi_ok) delete completion;
  });
  if (started.code < 0) {
    ReleaseCompletions();
    SystemError(env, started, "", 0).ThrowAsJavaScriptException();
    return;
  }
  napi_add_env_cleanup_hook(env, &NativeProxy::OnEnvironmentCleanup, this);
  cleanup_hook_registered_ = true;
}

NativeProxy::~NativeProxy() {
  ShutdownNow();
  RemoveCleanupHook(Env());
}

void NativeProxy::RemoveCleanupHook(napi_env env) {
  if (!cleanup_hook_registered_) return;
  napi_remove_env_cleanup_hook(env, &NativeProxy::OnEnvironmentCleanup, this);
  cleanup_hook_registered_ = false;
}

void NativeProxy::ReleaseCompletions() {
  // Not made when the constructor refused its arguments (the object is destroyed then).
  if (completions_released_ || static_cast<napi_threadsafe_function>(completions_) == nullptr) return;
  completions_released_ = true;
  completions_.Release();
}

void NativeProxy::OnEnvironmentCleanup(void* self) {
  auto* proxy = static_cast<NativeProxy*>(self);
  proxy->cleanup_hook_registered_ = false;
  proxy->ShutdownNow();
}

void NativeProxy::ShutdownNow() {
  // Threads exit after closing their sockets; joining them takes no longer than one
  // pass of their loops.
  engine_.stop(ps::kNoRequest);
  engine_.join();
  // No thread is left to push: drop the notifier's copy of the queue before releasing it.
  engine_.events().disable();
  ReleaseCompletions();
}

void NativeProxy::DeliverCompletion(Napi::Env env, Napi::Function callback, NativeProxy* self, Completion* completion) {
  std::unique_ptr<Completion> owned(completion);
  if (env == nullptr) return;  // The environment is being torn down.
  if (completion->request == ps::kOwnerStopRequest) {
    self->FinishClose(env);
    return;
  }
  if (completion->request == ps::kEventsReady) {
    if (!self->on_events_.IsEmpty()) self->on_events_.Call({});
    return;
  }
  callback.Call(
      {Napi::Number::New(env, static_cast<double>(completion->request)), Napi::Number::New(env, completion->result)});
}

void NativeProxy::FinishClose(Napi::Env env) {
  ShutdownNow();  // The threads have already stopped: this joins them and releases.
  RemoveCleanupHook(env);
  if (close_deferred_) {
    close_deferred_->Resolve(env.Undefined());
    close_deferred_.reset();
  }
}

// Reads an integer property, checking its range (JavaScript validated it already; this
// keeps a bad call from the raw binding from reaching the engine).
static bool ReadInt(Napi::Object spec, const char* key, int64_t min, int64_t max, int64_t* out) {
  Napi::Value value = spec.Get(key);
  if (!value.IsNumber()) return ThrowTypeError(spec.Env(), (std::string(key) + " must be a number").c_str());
  double number = value.As<Napi::Number>().DoubleValue();
  if (!(number >= static_cast<double>(min) && number <= static_cast<double>(max))) {
    Napi::RangeError::New(spec.Env(), std::string(key) + " is out of range").ThrowAsJavaScriptException();
    return false;
  }
  *out = static_cast<int64_t>(number);
  return true;
}

// Reads a request id from JavaScript: a whole number from ps::kFirstRequest up to 2^53 (the
// integers a double holds exactly), so that it can be neither of the engine's reserved ids.
static bool ReadRequest(Napi::Value value, uint64_t* out) {
  double number = value.As<Napi::Number>().DoubleValue();
  if (!(number >= static_cast<double>(ps::kFirstRequest) && number <= 9007199254740992.0) ||
      number != static_cast<double>(static_cast<uint64_t>(number))) {
    Napi::RangeError::New(value.Env(), "requestId must be a whole number from 1 to 2^53").ThrowAsJavaScriptException();
    return false;
  }
  *out = static_cast<uint64_t>(number);
  return true;
}

Napi::Value NativeProxy::Add(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 2 || !info[0].IsNumber() || !info[1].IsObject()) {
    ThrowTypeError(env, "add(requestId, spec)");
    return env.Undefined();
  }
  uint64_t request = 0;
  if (!ReadRequest(info[0], &request)) return env.Undefined();
  Napi::Object spec = info[1].As<Napi::Object>();
  std::string proto = spec.Get("proto").ToString().Utf8Value();
  std::string listen_host = spec.Get("listenHost").ToString().Utf8Value();
  std::string target_host = spec.Get("targetHost").ToString().Utf8Value();
  int64_t listen_port, target_port, backlog, connect_timeout, udp_timeout, udp_max_flows;
  if (!ReadInt(spec, "listenPort", 0, 65535, &listen_port) || !ReadInt(spec, "targetPort", 1, 65535, &target_port) ||
      !ReadInt(spec, "backlog", 1, 65535, &backlog) ||
      !ReadInt(spec, "connectTimeoutMs", 1, INT32_MAX, &connect_timeout) ||
      !ReadInt(spec, "udpTimeoutMs", 1, INT32_MAX, &udp_timeout) ||
      !ReadInt(spec, "udpMaxFlows", 1, UINT32_MAX, &udp_max_flows)) {
    return env.Undefined();
  }

  ps::MappingConfig config;
  if (proto == "tcp") {
    config.proto = ps::Proto::kTcp;
  } else if (proto == "udp") {
    config.proto = ps::Proto::kUdp;
  } else {
    ThrowTypeError(env, "proto must be 'tcp' or 'udp'");
    return env.Undefined();
  }
  config.backlog = static_cast<int>(backlog);
  config.connect_timeout_ms = static_cast<int>(connect_timeout);
  config.udp_timeout_ms = static_cast<int>(udp_timeout);
  config.udp_max_flows = static_cast<uint32_t>(udp_max_flows);
  config.ipv6_only = spec.Get("ipv6Only").ToBoolean().Value();
  // keepAlive: false, or { idleMs, intervalMs, count } in whole seconds (the kernel's unit).
  Napi::Value keep_alive = spec.Get("keepAlive");
  config.keep_alive.enabled = keep_alive.IsObject();
  if (config.keep_alive.enabled) {
    Napi::Object k = keep_alive.As<Napi::Object>();
    int64_t idle_ms, interval_ms, count;
    if (!ReadInt(k, "idleMs", 1000, 32767000, &idle_ms) || !ReadInt(k, "intervalMs", 1000, 32767000, &interval_ms) ||
        !ReadInt(k, "count", 1, 127, &count)) {
      return env.Undefined();
    }
    config.keep_alive.idle_s = static_cast<int>(idle_ms / 1000);
    config.keep_alive.interval_s = static_cast<int>(interval_ms / 1000);
    config.keep_alive.count = static_cast<int>(count);
  }
  // proxyProtocol: undefined (off), 'v1' or 'v2'; JavaScript refuses it on UDP.
  Napi::Value proxy_protocol = spec.Get("proxyProtocol");
  if (!proxy_protocol.IsUndefined()) {
    std::string version = proxy_protocol.ToString().Utf8Value();
    if (version == "v1") {
      config.proxy_protocol = ps::ProxyProtocol::kV1;
    } else if (version == "v2") {
      config.proxy_protocol = ps::ProxyProtocol::kV2;
    } else {
      ThrowTypeError(env, "proxyProtocol must be 'v1' or 'v2'");
      return env.Undefined();
    }
    if (config.proto != ps::Proto::kTcp) {
      ThrowTypeError(env, "proxyProtocol applies to TCP mappings only");
      return env.Undefined();
    }
  }
  config.accept_proxy_protocol = spec.Get("acceptProxyProtocol").ToBoolean().Value();
  if (config.accept_proxy_protocol && config.proto != ps::Proto::kTcp) {
    ThrowTypeError(env, "acceptProxyProtocol applies to TCP mappings only");
    return env.Undefined();
  }
  // Limits (TCP): 0 turns each off.
  int64_t max_connections, idle_timeout;
  if (!ReadInt(spec, "maxConnections", 0, INT32_MAX, &max_connections) ||
      !ReadInt(spec, "idleTimeoutMs", 0, INT32_MAX, &idle_timeout)) {
    return env.Undefined();
  }
  config.max_connections = static_cast<int>(max_connections);
  config.idle_timeout_ms = static_cast<int>(idle_timeout);
  if (ps::parse_address(listen_host.c_str(), static_cast<uint16_t>(listen_port), &config.listen) < 0) {
    SystemError(env, {-EINVAL, "bind"}, listen_host, static_cast<int>(listen_port)).ThrowAsJavaScriptException();
    return env.Undefined();
  }
  if (ps::parse_address(target_host.c_str(), static_cast<uint16_t>(target_port), &config.target) < 0) {
    SystemError(env, {-EINVAL, "connect"}, target_host, static_cast<int>(target_port)).ThrowAsJavaScriptException();
    return env.Undefined();
  }

  uint32_t id = 0;
  uint16_t port = 0;
  ps::Error error = engine_.add(config, request, &id, &port);
  if (error.code < 0) {
    SystemError(env, error, listen_host, static_cast<int>(listen_port)).ThrowAsJavaScriptException();
    return env.Undefined();
  }
  Napi::Object result = Napi::Object::New(env);
  result.Set("id", Napi::Number::New(env, id));
  result.Set("port", Napi::Number::New(env, port));
  return result;
}

// Both take (requestId, mappingId) and complete asynchronously.
static bool ReadMappingCommand(const Napi::CallbackInfo& info, const char* usage, uint64_t* request, uint32_t* id) {
  if (info.Length() < 2 || !info[0].IsNumber() || !info[1].IsNumber()) return ThrowTypeError(info.Env(), usage);
  if (!ReadRequest(info[0], request)) return false;
  *id = info[1].As<Napi::Number>().Uint32Value();
  return true;
}

Napi::Value NativeProxy::StopListening(const Napi::CallbackInfo& info) {
  uint64_t request = 0;
  uint32_t id = 0;
  if (ReadMappingCommand(info, "stopListening(requestId, mappingId)", &request, &id)) {
    int rc = engine_.stop_listening(id, request);
    if (rc < 0) SystemError(info.Env(), {rc, "stopListening"}, "", 0).ThrowAsJavaScriptException();
  }
  return info.Env().Undefined();
}

Napi::Value NativeProxy::Remove(const Napi::CallbackInfo& info) {
  uint64_t request = 0;
  uint32_t id = 0;
  if (ReadMappingCommand(info, "remove(requestId, mappingId)", &request, &id)) {
    int rc = engine_.remove(id, request);
    if (rc < 0) SystemError(info.Env(), {rc, "remove"}, "", 0).ThrowAsJavaScriptException();
  }
  return info.Env().Undefined();
}

Napi::Value NativeProxy::Close(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (close_deferred_) return close_deferred_->Promise();
  auto deferred = std::make_unique<Napi::Promise::Deferred>(env);
  Napi::Promise promise = deferred->Promise();
  if (engine_.stop(ps::kOwnerStopRequest) < 0) {
    // Already stopped: nothing is left to close.
    FinishClose(env);
    deferred->Resolve(env.Undefined());
    return promise;
  }
  // Hold the event loop open until the threads have exited, even if unref'd.
  completions_.Ref(env);
  close_deferred_ = std::move(deferred);
  return promise;
}

Napi::Value NativeProxy::Stats(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::vector<uint64_t> rows;
  engine_.snapshot(&rows);
  auto array = Napi::BigUint64Array::New(env, rows.size());
  for (size_t i = 0; i < rows.size(); i++) array[i] = rows[i];
  return array;
}

Napi::Value NativeProxy::Threads(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), engine_.thread_count());
}

Napi::Value NativeProxy::Ref(const Napi::CallbackInfo& info) {
  if (!completions_released_) completions_.Ref(info.Env());
  return info.Env().Undefined();
}

Napi::Value NativeProxy::Unref(const Napi::CallbackInfo& info) {
  if (!completions_released_) completions_.Unref(info.Env());
  return info.Env().Undefined();
}

// watchEvents(onEvents | null): with a function, the engine records failure events and
// calls onEvents() (on this thread, at most once between two takeEvents()) when some are
// waiting; with null it stops recording them and drops what is queued.
Napi::Value NativeProxy::WatchEvents(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !(info[0].IsFunction() || info[0].IsNull())) {
    ThrowTypeError(env, "watchEvents(onEvents | null)");
    return env.Undefined();
  }
  if (info[0].IsNull() || completions_released_) {
    engine_.events().disable();
    on_events_.Reset();
    return env.Undefined();
  }
  on_events_ = Napi::Persistent(info[0].As<Napi::Function>());
  Completions tsfn = completions_;
  engine_.events().enable([tsfn]() {
    auto* completion = new Completion{ps::kEventsReady, 0};
    if (tsfn.NonBlockingCall(completion) != napi_ok) delete completion;
  });
  return env.Undefined();
}

namespace {

const char* ReasonName(ps::FailReason reason) {
  switch (reason) {
    case ps::FailReason::kRefused:
      return "refused";
    case ps::FailReason::kTimeout:
      return "timeout";
    case ps::FailReason::kUnreachable:
      return "unreachable";
    case ps::FailReason::kOther:
      break;
  }
  return "other";
}

// Sets `host` and `port` from an IPv4 or IPv6 address; nothing for an empty one.
void SetAddress(Napi::Object object, const ps::SocketAddress& address) {
  char text[INET6_ADDRSTRLEN] = "";
  const void* raw = nullptr;
  if (address.length > 0 && address.family() == AF_INET) {
    raw = &reinterpret_cast<const sockaddr_in*>(address.get())->sin_addr;
  } else if (address.length > 0 && address.family() == AF_INET6) {
    raw = &reinterpret_cast<const sockaddr_in6*>(address.get())->sin6_addr;
  }
  if (raw == nullptr || inet_ntop(address.family(), raw, text, sizeof text) == nullptr) return;
  object.Set("host", Napi::String::New(object.Env(), text));
  object.Set("port", Napi::Number::New(object.Env(), address.port()));
}

}  // namespace

// takeEvents(): { events: [{ kind, mapping, reason, errno, time, client? }], dropped }.
Napi::Value NativeProxy::TakeEvents(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::vector<ps::Event> events;
  uint64_t dropped = engine_.events().take(&events);
  Napi::Array list = Napi::Array::New(env, events.size());
  for (size_t i = 0; i < events.size(); i++) {
    const ps::Event& e = events[i];
    Napi::Object object = Napi::Object::New(env);
    bool target = e.kind == ps::EventKind::kTargetFailure;
    object.Set("kind", Napi::String::New(env, target ? "targetFailure" : "listenerError"));
    object.Set("mapping", Napi::Number::New(env, e.mapping));
    if (target) object.Set("reason", Napi::String::New(env, ReasonName(e.reason)));
    object.Set("errno", Napi::Number::New(env, e.error));
    object.Set("time", Napi::Number::New(env, static_cast<double>(e.time_ms)));
    if (target && e.client.length > 0) {
      Napi::Object client = Napi::Object::New(env);
      SetAddress(client, e.client);
      object.Set("client", client);
    }
    list.Set(static_cast<uint32_t>(i), object);
  }
  Napi::Object result = Napi::Object::New(env);
  result.Set("events", list);
  result.Set("dropped", Napi::Number::New(env, static_cast<double>(dropped)));
  return result;
}

}  // namespace portsplice
