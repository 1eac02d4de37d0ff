"""Server reflection on both protocol versions.

grpcio-reflection ships only grpc.reflection.v1alpha; grpcurl 1.8.7 and later ask for
grpc.reflection.v1 first. The two protocols are the same messages under another package, so
v1 is served by the v1alpha servicer through a descriptor renamed at start-up.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, cast

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from grpc_reflection.v1alpha import reflection, reflection_pb2

V1ALPHA = "grpc.reflection.v1alpha"
V1 = "grpc.reflection.v1"
V1_SERVICE = f"{V1}.ServerReflection"


def _v1_message_classes() -> tuple[type[Any], type[Any]]:
    pool = descriptor_pool.Default()
    try:
        pool.FindServiceByName(V1_SERVICE)
    except KeyError:
        file_proto = descriptor_pb2.FileDescriptorProto()
        reflection_pb2.DESCRIPTOR.CopyToProto(file_proto)
        file_proto.name = "grpc/reflection/v1/reflection.proto"
        file_proto.package = V1
        for message in file_proto.message_type:
            for field in message.field:
                if field.HasField("type_name"):
                    field.type_name = field.type_name.replace(f".{V1ALPHA}.", f".{V1}.")
        for service in file_proto.service:
            for method in service.method:
                method.input_type = method.input_type.replace(f".{V1ALPHA}.", f".{V1}.")
                method.output_type = method.output_type.replace(f".{V1ALPHA}.", f".{V1}.")
        pool.Add(file_proto)
    request = message_factory.GetMessageClass(
        pool.FindMessageTypeByName(f"{V1}.ServerReflectionRequest")
    )
    response = message_factory.GetMessageClass(
        pool.FindMessageTypeByName(f"{V1}.ServerReflectionResponse")
    )
    return request, response


def enable_reflection(service_names: Sequence[str], server: grpc.Server) -> None:
    """Serve reflection for `service_names` (plus both reflection services) on `server`."""
    names = (*service_names, reflection.SERVICE_NAME, V1_SERVICE)
    servicer = reflection.ReflectionServicer(names)
    reflection.enable_server_reflection(names, server)
    v1_request, v1_response = _v1_message_classes()
    # grpc-stubs types ServerReflectionInfo as returning None; it is a generator.
    alpha_info = cast(Callable[..., Iterator[Any]], servicer.ServerReflectionInfo)

    def v1_info(requests: Iterable[Any], context: grpc.ServicerContext) -> Iterator[Any]:
        alpha_requests = (
            reflection_pb2.ServerReflectionRequest.FromString(item.SerializeToString())
            for item in requests
        )
        for answer in alpha_info(alpha_requests, context):
            yield v1_response.FromString(answer.SerializeToString())

    handler = grpc.method_handlers_generic_handler(
        V1_SERVICE,
        {
            "ServerReflectionInfo": grpc.stream_stream_rpc_method_handler(
                v1_info,
                request_deserializer=v1_request.FromString,
                response_serializer=lambda message: message.SerializeToString(),
            )
        },
    )
    server.add_generic_rpc_handlers((handler,))
