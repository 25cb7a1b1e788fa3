// The web UI's static files (apps/server/web), compiled into the server by embed_files.cmake.
#pragma once

#include <string_view>
#include <vector>

namespace kvcache::server {

struct WebAsset {
    std::string_view path;     ///< "/index.html", "/app.js", ...
    std::string_view content;
};

const std::vector<WebAsset>& web_assets();

}  // namespace kvcache::server
