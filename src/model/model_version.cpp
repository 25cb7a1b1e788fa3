// Anchors the model library so it has an object even before its other sources exist.
namespace kvcache::model {
int model_library_anchor() noexcept { return 1; }
}  // namespace kvcache::model
