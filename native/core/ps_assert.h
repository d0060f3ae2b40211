// PS_ASSERT: a caller's broken promise caught at function entry, where it would otherwise
// corrupt a pool's or a loop's bookkeeping silently. Compiled in when PORTSPLICE_ASSERTS is
// defined (the sanitizer builds and the core's ctest programs: see CMakeLists.txt), out of
// the release builds, whose hot path should not pay a branch per call for them.
#ifndef PORTSPLICE_PS_ASSERT_H_
#define PORTSPLICE_PS_ASSERT_H_

#include <stdio.h>
#include <stdlib.h>

#ifdef PORTSPLICE_ASSERTS
#define PS_ASSERT(cond)                                                                                      \
  do {                                                                                                       \
    if (!(cond)) {                                                                                           \
      fprintf(stderr, "portsplice: %s:%d: %s: assertion failed: %s\n", __FILE__, __LINE__, __func__, #cond); \
      abort();                                                                                               \
    }                                                                                                        \
  } while (0)
#else
#define PS_ASSERT(cond) ((void)0)
#endif

#endif  // PORTSPLICE_PS_ASSERT_H_
