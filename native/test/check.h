// The assertions of the core's test programs: each failure names the file, the line and
// the expression, and exits non-zero, so that ctest reports the program as failed.
#ifndef PORTSPLICE_TEST_CHECK_H_
#define PORTSPLICE_TEST_CHECK_H_

#include <stdio.h>
#include <stdlib.h>

#define CHECK(cond)                                                            \
  do {                                                                         \
    if (!(cond)) {                                                             \
      fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
      exit(1);                                                                 \
    }                                                                          \
  } while (0)

// Compares as long long, which every integer value in these tests fits, and prints both.
#define CHECK_EQ(actual, expected)                                                                             \
  do {                                                                                                         \
    long long actual_ = static_cast<long long>(actual), expected_ = static_cast<long long>(expected);          \
    if (actual_ != expected_) {                                                                                \
      fprintf(stderr, "%s:%d: CHECK_EQ failed: %s is %lld, expected %s (%lld)\n", __FILE__, __LINE__, #actual, \
              actual_, #expected, expected_);                                                                  \
      exit(1);                                                                                                 \
    }                                                                                                          \
  } while (0)

#endif  // PORTSPLICE_TEST_CHECK_H_
