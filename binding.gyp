{
  "includes": ["native/sources.gypi"],
  "targets": [
    {
      "target_name": "portsplice",
      "sources": [
        "<@(core_sources)",
        "<@(addon_sources)"
      ],
      "include_dirs": ["<!(node -p \"require('node-addon-api').include_dir\")"],
      "defines": [
        "NAPI_VERSION=8",
        "NAPI_DISABLE_CPP_EXCEPTIONS",
        "NODE_ADDON_API_DISABLE_DEPRECATED"
      ],
      "cflags!": ["-O2", "-O3", "-Os"],
      "cflags_cc!": ["-std=gnu++17", "-std=c++17", "-std=gnu++20"],
      "cflags": ["-O3", "-fvisibility=hidden", "-Wall", "-Wextra"],
      "cflags_cc": ["-std=c++17", "-fvisibility-inlines-hidden"],
      "conditions": [
        ["OS!='linux'", { "type": "none" }]
      ]
    },
    {
      "target_name": "portsplice-docker-proxy",
      "type": "executable",
      "sources": [
        "<@(core_sources)",
        "<@(cli_sources)",
        "native/cli/main.cc"
      ],
      "defines": [
        "PORTSPLICE_VERSION=\"<!(node -p \"require('./package.json').version\")\""
      ],
      "cflags!": ["-O2", "-O3", "-Os"],
      "cflags_cc!": ["-std=gnu++17", "-std=c++17", "-std=gnu++20"],
      "cflags": ["-O3", "-fvisibility=hidden", "-Wall", "-Wextra"],
      "cflags_cc": ["-std=c++17", "-fvisibility-inlines-hidden"],
      "ldflags": [
        "<!@(t=$(mktemp -d) && ${CXX:-g++} -std=c++17 -static -pthread native/cli/static_link_probe.cc -o $t/probe >/dev/null 2>&1 && echo -static; rm -rf $t)"
      ],
      "libraries": ["-lpthread"],
      "conditions": [
        ["OS!='linux'", { "type": "none" }]
      ]
    }
  ]
}
