// In-flight storage for one direction of a connection: a pipe (the splice path) or a
// user-space buffer (the copy fallback). Both come from per-thread pools and are held
// only while bytes are in flight, so an idle connection pins neither pipes nor memory.
#ifndef PORTSPLICE_PS_STORE_H_
#define PORTSPLICE_PS_STORE_H_

#include <stddef.h>

#include <memory>
#include <vector>

#include "ps_fd.h"

namespace ps {

struct Pipe {
  UniqueFd read_end;
  UniqueFd write_end;
  size_t capacity = 0;

  bool valid() const { return read_end.valid(); }
};

class PipePool {
 public:
  // `pipe_size`: the capacity asked for with F_SETPIPE_SZ; 0 chooses: 1 MiB for a
  // privileged process, which fs.pipe-user-pages-soft does not limit, else the
  // kernel's default, so as not to eat the per-user pipe budget of other programs.
  // `max_in_use`: pipes handed out at once before acquire() refuses (0: no limit).
  PipePool(size_t pipe_size, size_t max_in_use, size_t max_idle);

  // Hands out an empty pipe. Returns 0, or a negative errno (-EMFILE, -ENFILE, or
  // -ENOSPC when max_in_use is reached) after which the caller copies instead.
  int acquire(Pipe* out);

  // Takes back a pipe. Only an empty pipe may be pooled; one that still holds bytes
  // (a connection reset mid-transfer) must be given with `empty` false and is closed.
  void release(Pipe* pipe, bool empty);

  // Closes the idle pipes.
  void clear() { idle_.clear(); }

  // Pipes handed out now, the count max_in_use limits; read by native/test/test_pipe_pool.cc.
  size_t in_use() const { return in_use_; }

  // A connection moving to another thread takes its pipes along: the old pool stops
  // counting them (on the old thread) and the new one starts (on the new thread).
  void disown(size_t pipes) { in_use_ -= pipes; }
  void adopt(size_t pipes) { in_use_ += pipes; }

 private:
  size_t pipe_size_;
  size_t max_in_use_;
  size_t max_idle_;
  size_t in_use_ = 0;
  std::vector<Pipe> idle_;
};

class BufferPool {
 public:
  static constexpr size_t kBufferSize = 64 * 1024;

  explicit BufferPool(size_t max_idle) : max_idle_(max_idle) {}

  // Returns a buffer of kBufferSize bytes, or nullptr when memory is exhausted.
  char* acquire();
  void release(char* buffer);

  // Frees the idle buffers.
  void clear() { idle_.clear(); }

 private:
  size_t max_idle_;
  std::vector<std::unique_ptr<char[]>> idle_;
};

}  // namespace ps

#endif  // PORTSPLICE_PS_STORE_H_
