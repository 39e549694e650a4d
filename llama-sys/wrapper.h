#include "llama.h"
#include "gguf.h"
#include "ggml-rpc.h"
