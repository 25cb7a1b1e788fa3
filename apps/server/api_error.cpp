#include "api_error.hpp"

namespace kvcache::server {

nlohmann::json ApiError::to_json() const {
    nlohmann::json error{{"message", what()}, {"type", type_}, {"code", code_}};
    error["param"] = param_.empty() ? nlohmann::json(nullptr) : nlohmann::json(param_);
    return {{"error", std::move(error)}};
}

ApiError bad_request(const std::string& code, const std::string& message, const std::string& param) {
    return ApiError(400, "invalid_request_error", code, message, param);
}

ApiError not_found(const std::string& code, const std::string& message, const std::string& param) {
    return ApiError(404, "not_found_error", code, message, param);
}

ApiError conflict(const std::string& code, const std::string& message) {
    return ApiError(409, "conflict_error", code, message);
}

ApiError unauthorized(const std::string& message) {
    return ApiError(401, "authentication_error", "invalid_api_key", message);
}

ApiError busy(const std::string& code, const std::string& message) {
    return ApiError(503, "server_busy_error", code, message);
}

nlohmann::json error_body(int status, const std::string& message) {
    std::string type = "invalid_request_error", code = "bad_request";
    if (status == 404) type = "not_found_error", code = "not_found";
    if (status == 405) code = "method_not_allowed";
    if (status == 413) code = "body_too_large";
    if (status == 414) code = "uri_too_long";
    if (status >= 500) type = "server_error", code = "internal_error";
    return ApiError(status, type, code, message).to_json();
}

}  // namespace kvcache::server
