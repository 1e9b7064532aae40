"""KServe v2 / Open Inference Protocol over gRPC: the service definition and its
GENERATED Python modules.

- grpc_predict_v2.proto: the service (package `inference`, `GRPCInferenceService`),
  written from the public specification (see the file's head).
- grpc_predict_v2_pb2.py, grpc_predict_v2_pb2.pyi, grpc_predict_v2_pb2_grpc.py: GENERATED
  by `make proto` (grpcio-tools' protoc; the version is in each file's head and in the
  Makefile). Never edit them by hand: change the .proto and run `make proto`.

The generated modules are committed, so that installing orloj-rt needs no protoc. The
hand-written server is runtime/grpc_gateway.py; it imports these only when it builds the
server, because they register `inference.*` messages in protobuf's default descriptor
pool, as tritonclient's own generated modules do: the two cannot be imported into one
process.
"""
