// ApiError: a failed HTTP request as the OpenAI API reports it — a status and {"error": {message, type, code}}.
#pragma once

#include <stdexcept>
#include <string>

#include <nlohmann/json.hpp>

namespace kvcache::server {

/// Thrown anywhere while a request is handled; the HTTP layer turns it into the response. Thrown before
/// anything changed (validation happens before slots, the pool or the scheduler are touched).
class ApiError : public std::runtime_error {
public:
    ApiError(int status, std::string type, std::string code, const std::string& message, std::string param = {})
        : std::runtime_error(message), status_(status), type_(std::move(type)), code_(std::move(code)),
          param_(std::move(param)) {}

    int status() const { return status_; }
    const std::string& type() const { return type_; }
    const std::string& code() const { return code_; }
    const std::string& param() const { return param_; }

    /// {"error": {"message", "type", "code", "param"}} (param null when there is none).
    nlohmann::json to_json() const;

private:
    int status_;
    std::string type_;
    std::string code_;
    std::string param_;
};

/// 400 invalid_request_error: the request is malformed or names something impossible.
ApiError bad_request(const std::string& code, const std::string& message, const std::string& param = {});
/// 404 not_found_error: an unknown slot or route.
ApiError not_found(const std::string& code, const std::string& message, const std::string& param = {});
/// 409 conflict_error: the slot is busy with another request.
ApiError conflict(const std::string& code, const std::string& message);
/// 401 authentication_error.
ApiError unauthorized(const std::string& message);
/// 503 server_busy_error: a limit of the server (queue, slots) was reached; retry later.
ApiError busy(const std::string& code, const std::string& message);

/// The JSON body of an error with the given status and message (for errors raised outside handlers).
nlohmann::json error_body(int status, const std::string& message);

}  // namespace kvcache::server
