// The module entry point. Everything is per environment (no static JavaScript handles),
// so the addon loads in worker threads as well as on the main thread.
#include <napi.h>

#include "../core/ps_counters.h"
#include "../core/ps_worker.h"
#include "native_proxy.h"

namespace portsplice {

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("NativeProxy", NativeProxy::Define(env));
  Napi::Array fields = Napi::Array::New(env, ps::kStatsFieldCount);
  for (uint32_t i = 0; i < ps::kStatsFieldCount; i++) fields.Set(i, Napi::String::New(env, ps::kStatsFieldNames[i]));
  fields.Freeze();
  exports.Set("statsFields", fields);
  // Figures of the engine that tools measure against (soak/), from their one definition.
  Napi::Object constants = Napi::Object::New(env);
  constants.Set("maxIdlePipesPerThread",
                Napi::Number::New(env, static_cast<double>(ps::EngineOptions{}.max_idle_pipes)));
  constants.Set("fdsPerWorker", Napi::Number::New(env, ps::kFdsPerWorker));
  constants.Freeze();
  exports.Set("engineConstants", constants);
  return exports;
}

}  // namespace portsplice

static Napi::Object InitModule(Napi::Env env, Napi::Object exports) {
  return portsplice::Init(env, exports);
}

NODE_API_MODULE(portsplice, InitModule)
