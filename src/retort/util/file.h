// retort/util/file.h — small file helpers: read whole files, memory-map, write atomically.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace retort {

// Read a whole file; throws retort::Error naming the path when it cannot.
std::string read_file(const std::string& path);

// Write `data` to `path` atomically: write path.tmp.<pid>, fsync, rename over path.
// A crash or a full disk leaves either the old file or the new one, never half of one.
void write_file_atomic(const std::string& path, std::string_view data);

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
