#include "kvcache/detail/mapped_file.hpp"

#include <fcntl.h>
#include <fmt/format.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>
#include <utility>

#include "kvcache/error.hpp"
#include "sigbus_guard.hpp"

namespace kvcache::detail {

namespace {

[[noreturn]] void fail(std::string_view who, const char* what, const std::filesystem::path& path, int err) {
    throw IoError(std::string(who) + ": " + what + " '" + path.string() + "': " + std::strerror(err));
}

}  // namespace

MappedFile MappedFile::open(const std::filesystem::path& path, std::string_view who, bool populate) {
    // O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer; the file is refused below
    // as not regular. (For a regular file the flag changes nothing.)
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
    if (fd < 0) fail(who, "cannot open", path, errno);
    struct stat st {};
    if (::fstat(fd, &st) != 0) {
        const int err = errno;
        ::close(fd);
        fail(who, "cannot stat", path, err);
    }
    if (!S_ISREG(st.st_mode)) {
        ::close(fd);
        throw IoError(std::string(who) + ": '" + path.string() + "' is not a regular file");
    }
    MappedFile file;
    const auto size = static_cast<std::size_t>(st.st_size);
    if (size == 0) {
        ::close(fd);  // nothing is mapped, so nothing can change under a mapping
        return file;
    }
    file.fd_ = fd;  // from here on the destructor closes it
    file.who_ = who;
    file.path_ = path.string();
    file.size_ = size;
    void* address = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE | (populate ? MAP_POPULATE : 0), fd, 0);
    if (address == MAP_FAILED) fail(who, "cannot map", path, errno);
    file.address_ = address;
    file.guard_ = guard_range(address, size);
    return file;
}

void MappedFile::check_unchanged() const {
    if (address_ == nullptr) return;
    const bool faulted = range_faulted(guard_);
    struct stat st {};
    const bool stat_ok = ::fstat(fd_, &st) == 0;
    // Size, not modification time: kvcache's own CacheDirectory::touch marks a cache file used by its mtime,
    // possibly while another process has it mapped, and that is no change of its bytes.
    const bool same = stat_ok && static_cast<std::size_t>(st.st_size) == size_;
    if (same && !faulted) return;
    const std::string now = stat_ok ? fmt::format("now {} bytes", st.st_size) : std::string("cannot stat it now");
    throw FormatError(fmt::format("{}: '{}' changed while mapped ({}, was {}){}", who_, path_, now, size_,
                                  faulted ? "; what was read past its new end is zeros, not the file" : ""));
}

void MappedFile::release() noexcept {
    if (guard_ != nullptr) release_range(guard_);  // before unmapping: the handler must not claim the addresses
    if (address_ != nullptr) ::munmap(address_, size_);
    if (fd_ >= 0) ::close(fd_);
    address_ = nullptr;
    size_ = 0;
    fd_ = -1;
    guard_ = nullptr;
}

MappedFile::MappedFile(MappedFile&& other) noexcept
    : address_(std::exchange(other.address_, nullptr)),
      size_(std::exchange(other.size_, 0)),
      fd_(std::exchange(other.fd_, -1)),
      guard_(std::exchange(other.guard_, nullptr)),
      who_(std::move(other.who_)),
      path_(std::move(other.path_)) {}

MappedFile& MappedFile::operator=(MappedFile&& other) noexcept {
    if (this != &other) {
        release();
        address_ = std::exchange(other.address_, nullptr);
        size_ = std::exchange(other.size_, 0);
        fd_ = std::exchange(other.fd_, -1);
        guard_ = std::exchange(other.guard_, nullptr);
        who_ = std::move(other.who_);
        path_ = std::move(other.path_);
    }
    return *this;
}

MappedFile::~MappedFile() { release(); }

}  // namespace kvcache::detail
