// retort/util/file.h — small file helpers: read whole files, memory-map, write atomically.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace retort {

// Read a whole file; throws retort::Error naming the path when it cannot.
std::string read_file(const std::string& path);

// Write `data` to `path` atomically (see AtomicFile).
void write_file_atomic(const std::string& path, std::string_view data);

// A file written in pieces and published atomically: bytes go to path.tmp.<pid> beside the
// target (same filesystem), commit() fsyncs, renames over path and fsyncs the directory.
// A crash, a full disk or a destruction without commit() leaves the old file (if any) and no
// temp file behind, never half of a new one. Errors name `what` (e.g. "safetensors out.st").
class AtomicFile {
 public:
  AtomicFile(const std::string& path, std::string what);
  ~AtomicFile();  // removes the temp file unless committed
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;

  void write(const void* data, size_t n);
  void commit();

 private:
  [[noreturn]] void abort_with(const char* step, int err);
  std::string path_, tmp_, what_;
  int fd_ = -1;
  bool committed_ = false;
};

// A read-only memory map of a whole file. Move-only; unmaps on destruction.
class MappedFile {
 public:
  MappedFile() = default;
  explicit MappedFile(const std::string& path);
  ~MappedFile();
  MappedFile(MappedFile&& o) noexcept;
  MappedFile& operator=(MappedFile&& o) noexcept;
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
};

}  // namespace retort
