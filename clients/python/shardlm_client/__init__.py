"""Python client of the shardlm Generation service (gRPC, proto/shardlm/v1/generation.proto).

    from shardlm_client import Client
    with Client("127.0.0.1:50051") as c:
        for chunk in c.generate(chat=[{"role": "user", "content": "Hi"}], max_new_tokens=32):
            print(chunk.text, end="", flush=True)

The gRPC stubs are generated from the .proto files on first import (see _proto.py).
"""
from .client import (Chunk, Client, Logprobs, ShardlmError, TokenLogprob, Usage, pb2,
                     pb2_grpc)

__all__ = ["Chunk", "Client", "Logprobs", "ShardlmError", "TokenLogprob", "Usage", "pb2",
           "pb2_grpc"]
