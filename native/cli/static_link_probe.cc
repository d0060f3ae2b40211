// Not part of the proxy: binding.gyp and CMakeLists.txt try to link this program with
// -static, and link portsplice-docker-proxy statically if that works. A static binary
// is ready about twice as fast and resident in a third of the memory of one linked
// against the shared libstdc++ (no dynamic loading, no relocations, only the pages it
// uses), which matters for a proxy that dockerd starts once per published port. Some
// systems ship no static C library (Fedora without glibc-static); there the proxy is
// linked dynamically and works the same. Threads are used because they are what a
// static glibc link most often gets wrong.
#include <thread>

int main() {
  std::thread thread([] {});
  thread.join();
  return 0;
}
