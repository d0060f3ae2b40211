// NativeProxy: the JavaScript face of one ps::Engine. A mechanical adapter: it converts
// arguments, forwards commands, turns negative errnos into Node-style errors, and
// delivers completions on the JavaScript thread through a ThreadSafeFunction.
#ifndef PORTSPLICE_NATIVE_PROXY_H_
#define PORTSPLICE_NATIVE_PROXY_H_

#include <napi.h>

#include <memory>

#include "../core/ps_engine.h"

namespace portsplice {

class NativeProxy : public Napi::ObjectWrap<NativeProxy> {
 public:
  static Napi::Function Define(Napi::Env env);

  // new NativeProxy(threads | "auto", onComplete, pipeSize?, maxPipes?); threads() is how
  // many engine threads run now.
  explicit NativeProxy(const Napi::CallbackInfo& info);
  ~NativeProxy() override;

 private:
  struct Completion {
    uint64_t request;
    int result;
  };

  Napi::Value Add(const Napi::CallbackInfo& info);
  Napi::Value StopListening(const Napi::CallbackInfo& info);
  Napi::Value Remove(const Napi::CallbackInfo& info);
  Napi::Value Close(const Napi::CallbackInfo& info);
  Napi::Value Stats(const Napi::CallbackInfo& info);
  Napi::Value Threads(const Napi::CallbackInfo& info);
  Napi::Value Ref(const Napi::CallbackInfo& info);
  Napi::Value Unref(const Napi::CallbackInfo& info);
  Napi::Value WatchEvents(const Napi::CallbackInfo& info);
  Napi::Value TakeEvents(const Napi::CallbackInfo& info);

  // Runs on the JavaScript thread for every completion a worker posted, and with a null
  // env for each one still queued when the environment tears the queue down: it always
  // frees the completion.
  static void DeliverCompletion(Napi::Env env, Napi::Function callback, NativeProxy* self, Completion* completion);
  // A typed thread-safe function, so that DeliverCompletion also sees the completions
  // still queued at teardown: the untyped Napi::ThreadSafeFunction skips its callback
  // when the env is null and leaks them (LeakSanitizer found it).
  using Completions = Napi::TypedThreadSafeFunction<NativeProxy, Completion, &NativeProxy::DeliverCompletion>;
  // The environment is going away (worker exit, process exit): stop and join now.
  static void OnEnvironmentCleanup(void* self);

  void FinishClose(Napi::Env env);
  void ShutdownNow();
  void ReleaseCompletions();
  void RemoveCleanupHook(napi_env env);

  ps::Engine engine_;
  Completions completions_;
  bool completions_released_ = false;
  bool cleanup_hook_registered_ = false;
  std::unique_ptr<Napi::Promise::Deferred> close_deferred_;
  // watchEvents(onEvents): called (through completions_) when failure events are waiting.
  Napi::FunctionReference on_events_;
};

}  // namespace portsplice

#endif  // PORTSPLICE_NATIVE_PROXY_H_
