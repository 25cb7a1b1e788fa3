#include "kvcache/detail/mapped_file.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>
#include <utility>

#include "kvcache/error.hpp"

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
    if (size > 0) {
        void* address = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE | (populate ? MAP_POPULATE : 0), fd, 0);
        if (address == MAP_FAILED) {
            const int err = errno;
            ::close(fd);
            fail(who, "cannot map", path, err);
        }
        file.address_ = address;
        file.size_ = size;
    }
    ::close(fd);  // the mapping keeps the file's pages reachable
    return file;
}

MappedFile::MappedFile(MappedFile&& other) noexcept
    : address_(std::exchange(other.address_, nullptr)), size_(std::exchange(other.size_, 0)) {}

MappedFile& MappedFile::operator=(MappedFile&& other) noexcept {
    if (this != &other) {
        if (address_) ::munmap(address_, size_);
        address_ = std::exchange(other.address_, nullptr);
        size_ = std::exchange(other.size_, 0);
    }
    return *this;
}

MappedFile::~MappedFile() {
    if (address_) ::munmap(address_, size_);
}

}  // namespace kvcache::detail
