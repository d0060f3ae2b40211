# The source lists of the native targets, once, for both builds: binding.gyp includes this
# file, and CMakeLists.txt reads the lists out of it (portsplice_sources()).
{
  "variables": {
    "core_sources": [
      "native/core/ps_addr.cc",
      "native/core/ps_engine.cc",
      "native/core/ps_error.cc",
      "native/core/ps_loop.cc",
      "native/core/ps_mapping.cc",
      "native/core/ps_proxy_protocol.cc",
      "native/core/ps_store.cc",
      "native/core/ps_tcp_session.cc",
      "native/core/ps_udp.cc",
      "native/core/ps_worker.cc"
    ],
    "cli_sources": [
      "native/cli/flags.cc",
      "native/cli/status_pipe.cc"
    ],
    "addon_sources": [
      "native/addon/addon.cc",
      "native/addon/native_proxy.cc"
    ]
  }
}
