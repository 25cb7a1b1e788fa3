// Umbrella header of the knowledge base layer (kvcache::kb): documents, chunking, the SQLite knowledge base,
// the QA prompt, knowledge caches, cache directories, the three answer modes and QA evaluation.
#pragma once

#include "kvcache/kb/answerer.hpp"
#include "kvcache/kb/cache_directory.hpp"
#include "kvcache/kb/chunker.hpp"
#include "kvcache/kb/disk_prompt_cache.hpp"
#include "kvcache/kb/document.hpp"
#include "kvcache/kb/knowledge_base.hpp"
#include "kvcache/kb/knowledge_cache.hpp"
#include "kvcache/kb/qa_dataset.hpp"
#include "kvcache/kb/qa_metrics.hpp"
#include "kvcache/kb/qa_prompt.hpp"
