"""Reference bytes for tests/test_proto_v038.py from the official tinker 0.38 protobuf descriptor.

Run with the official SDK's python (not collected by pytest):
/path/to/tinker-0.38/bin/python tests/gen_proto_v038_vectors.py
"""
import math
import struct

from tinker.proto import tinker_public_pb2 as pb


def f32(*xs):
    return struct.pack(f"<{len(xs)}f", *xs)


def i32(*xs):
    return struct.pack(f"<{len(xs)}i", *xs)


def i64(*xs):
    return struct.pack(f"<{len(xs)}q", *xs)


r = pb.SampleResponse()
s = r.sequences.add()
s.stop_reason = pb.STOP_REASON_LENGTH
s.tokens = i32(5, 6, 7)
s.logprobs = f32(-0.5, -1.0, -1.5)
s.topk_sampled_logprobs.token_ids = i32(5, 9, 6, 0, 7, 8)
s.topk_sampled_logprobs.logprobs = f32(-0.5, -2.0, -1.0, -99999.0, -1.5, -3.0)
s.topk_sampled_logprobs.k = 2
s.topk_sampled_logprobs.length = 3
r.prompt_logprobs = f32(math.nan, -1.25, -2.5)
r.prompt_cache_hit_tokens = 2
r.target_prompt_logprobs.dense = f32(-1.25, 0.0, -2.5, -4.0)
r.target_prompt_logprobs.dtype = pb.DTYPE_FLOAT32
r.target_prompt_logprobs.shape.extend([2, 2])
r.prompt_alt_tokens.tokens.dense = i64(11, 12)
r.prompt_alt_tokens.tokens.dtype = pb.DTYPE_INT64
r.prompt_alt_tokens.tokens.shape.extend([2, 1])
r.prompt_alt_tokens.logprobs.dense = f32(-0.75, -0.125)
r.prompt_alt_tokens.logprobs.dtype = pb.DTYPE_FLOAT32
r.prompt_alt_tokens.logprobs.shape.extend([2, 1])
print("SAMPLE_RESPONSE_FULL =", repr(r.SerializeToString().hex()))

r = pb.SampleResponse()
s = r.sequences.add()
s.tokens = i32(3)
t = r.target_prompt_logprobs
t.sparse_csr.values = f32(-1.5, -0.25)
t.sparse_csr.crow_indices = i64(0, 1, 1, 2)
t.sparse_csr.col_indices = i64(1, 0)
t.dtype = pb.DTYPE_FLOAT32
t.shape.extend([3, 2])
print("SAMPLE_RESPONSE_CSR =", repr(r.SerializeToString().hex()))

m = pb.ForwardBackwardRequest()
m.model_id = "m1"
m.seq_id = 4
m.loss_fn = "cross_entropy"
d = m.data.add()
d.model_input.add().encoded_text.tokens = i32(1, 2, 3, 4)
w = d.loss_fn_inputs["target_tokens"]
w.dense = i64(2, 3, 4, 5)
w.dtype = pb.DTYPE_INT64
w.shape.extend([4])
a = d.model_input_spans.add().prompt_tokens
a.sequence_id, a.offset, a.length = "req-0", 0, 2
b = d.model_input_spans.add().sampled_tokens
b.sequence_id, b.offset, b.length = "req-0", 1, 2
c = d.loss_fn_input_spans.add().prompt_tokens
c.sequence_id, c.offset, c.length = "req-0", 1, 1
e = d.loss_fn_input_spans.add().sampled_tokens
e.sequence_id, e.offset, e.length = "req-0", 0, 3
print("FORWARD_BACKWARD_SPANS =", repr(m.SerializeToString().hex()))
