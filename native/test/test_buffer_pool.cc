// BufferPool: buffers of kBufferSize bytes, reused while idle, at most `max_idle` kept.
#include <string.h>

#include "../core/ps_store.h"
#include "check.h"

int main() {
  ps::BufferPool pool(2);
  char* a = pool.acquire();
  char* b = pool.acquire();
  char* c = pool.acquire();
  CHECK(a != nullptr && b != nullptr && c != nullptr);
  CHECK(a != b && b != c && a != c);
  memset(a, 1, ps::BufferPool::kBufferSize);  // The whole size is usable (ASan checks it).

  pool.release(a);
  pool.release(b);
  pool.release(c);  // Over max_idle: freed (LeakSanitizer would report it otherwise).
  // The idle ones come back, the most recently released first.
  char* again = pool.acquire();
  CHECK(again == b);
  pool.release(again);
  pool.release(nullptr);  // Ignored.
  pool.clear();
  return 0;
}
