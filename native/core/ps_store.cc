#include "ps_store.h"

#include <errno.h>
#include <fcntl.h>
#include <unistd.h>

#include <new>

#include "ps_assert.h"

namespace ps {

namespace {

// Go's size for its splice pipes: large enough that one call moves what a socket buffers.
constexpr size_t kPrivilegedPipeSize = 1 << 20;

}  // namespace

PipePool::PipePool(size_t pipe_size, size_t max_in_use, size_t max_idle)
    : pipe_size_(pipe_size), max_in_use_(max_in_use), max_idle_(max_idle) {
  if (pipe_size_ == 0 && geteuid() == 0) pipe_size_ = kPrivilegedPipeSize;
}

int PipePool::acquire(Pipe* out) {
  PS_ASSERT(out != nullptr && !out->valid());  // Overwriting a held pipe would leak it.
  if (max_in_use_ != 0 && in_use_ >= max_in_use_) return -ENOSPC;
  if (!idle_.empty()) {
    *out = std::move(idle_.back());
    idle_.pop_back();
    in_use_++;
    return 0;
  }
  int fds[2];
  if (pipe2(fds, O_CLOEXEC | O_NONBLOCK) < 0) return -errno;
  out->read_end.reset(fds[0]);
  out->write_end.reset(fds[1]);
  // A larger pipe moves more per splice call. Over fs.pipe-user-pages-soft the kernel
  // refuses with EPERM and the pipe keeps the size it was given, which still works.
  int size = -1;
  if (pipe_size_ != 0) size = fcntl(fds[1], F_SETPIPE_SZ, static_cast<int>(pipe_size_));
  if (size < 0) size = fcntl(fds[1], F_GETPIPE_SZ);
  out->capacity = size > 0 ? static_cast<size_t>(size) : 4096;
  in_use_++;
  return 0;
}

void PipePool::release(Pipe* pipe, bool empty) {
  if (!pipe->valid()) return;
  PS_ASSERT(in_use_ > 0);  // A pipe this pool did not hand out, or one released twice.
  in_use_--;
  if (empty && idle_.size() < max_idle_) {
    idle_.push_back(std::move(*pipe));
  } else {
    pipe->read_end.reset();
    pipe->write_end.reset();
  }
}

char* BufferPool::acquire() {
  if (!idle_.empty()) {
    char* buffer = idle_.back().release();
    idle_.pop_back();
    return buffer;
  }
  return new (std::nothrow) char[kBufferSize];
}

void BufferPool::release(char* buffer) {
  if (buffer == nullptr) return;
  if (idle_.size() < max_idle_) {
    idle_.emplace_back(buffer);
  } else {
    delete[] buffer;
  }
}

}  // namespace ps
