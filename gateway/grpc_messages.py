"""The Open Inference Protocol's gRPC messages, as Triton serves them (``inference.GRPCInferenceService``, the
service ``tritonclient.grpc`` and KServe's v2 gRPC clients call); no I/O.

The messages are built from the table below when this module is imported, into a descriptor pool of their
own: no generated code and no ``protoc``, so any protobuf from 4.25 on will do, and a process that also
imports ``tritonclient.grpc`` (which registers the same names in protobuf's default pool) sees no clash.
Field names and numbers are those of Triton's ``grpc_service.proto``; ``tests/test_grpc.py`` checks each one
against the descriptors ``tritonclient`` ships.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

PACKAGE = "inference"
SERVICE = f"{PACKAGE}.GRPCInferenceService"

_F = descriptor_pb2.FieldDescriptorProto
_SCALARS = {
    "bool": _F.TYPE_BOOL,
    "int32": _F.TYPE_INT32,
    "int64": _F.TYPE_INT64,
    "uint32": _F.TYPE_UINT32,
    "uint64": _F.TYPE_UINT64,
    "float": _F.TYPE_FLOAT,
    "double": _F.TYPE_DOUBLE,
    "string": _F.TYPE_STRING,
    "bytes": _F.TYPE_BYTES,
}

# Each message (a dotted name is nested in its parent): its fields as (name, number, type), where the type is
# a scalar, a message's name, either one after "repeated ", "enum " and an enum's name (ENUMS), or
# "map InferParameter" (map<string, ...>). A message marked in PARTIAL holds only the fields torchgate fills
# of Triton's larger message (model configuration and statistics): a client reads the rest as unset.
MESSAGES: dict[str, tuple[tuple[str, int, str], ...]] = {
    "ServerLiveRequest": (),
    "ServerLiveResponse": (("live", 1, "bool"),),
    "ServerReadyRequest": (),
    "ServerReadyResponse": (("ready", 1, "bool"),),
    "ModelReadyRequest": (("name", 1, "string"), ("version", 2, "string")),
    "ModelReadyResponse": (("ready", 1, "bool"),),
    "ServerMetadataRequest": (),
    "ServerMetadataResponse": (
        ("name", 1, "string"),
        ("version", 2, "string"),
        ("extensions", 3, "repeated string"),
    ),
    "ModelMetadataRequest": (("name", 1, "string"), ("version", 2, "string")),
    "ModelMetadataResponse": (
        ("name", 1, "string"),
        ("versions", 2, "repeated string"),
        ("platform", 3, "string"),
        ("inputs", 4, "repeated ModelMetadataResponse.TensorMetadata"),
        ("outputs", 5, "repeated ModelMetadataResponse.TensorMetadata"),
    ),
    "ModelMetadataResponse.TensorMetadata": (
        ("name", 1, "string"),
        ("datatype", 2, "string"),
        ("shape", 3, "repeated int64"),
    ),
    "InferParameter": (  # one of them (the oneof parameter_choice)
        ("bool_param", 1, "bool"),
        ("int64_param", 2, "int64"),
        ("string_param", 3, "string"),
        ("double_param", 4, "double"),
        ("uint64_param", 5, "uint64"),
    ),
    "InferTensorContents": (
        ("bool_contents", 1, "repeated bool"),
        ("int_contents", 2, "repeated int32"),
        ("int64_contents", 3, "repeated int64"),
        ("uint_contents", 4, "repeated uint32"),
        ("uint64_contents", 5, "repeated uint64"),
        ("fp32_contents", 6, "repeated float"),
        ("fp64_contents", 7, "repeated double"),
        ("bytes_contents", 8, "repeated bytes"),
    ),
    "ModelInferRequest": (
        ("model_name", 1, "string"),
        ("model_version", 2, "string"),
        ("id", 3, "string"),
        ("parameters", 4, "map InferParameter"),
        ("inputs", 5, "repeated ModelInferRequest.InferInputTensor"),
        ("outputs", 6, "repeated ModelInferRequest.InferRequestedOutputTensor"),
        ("raw_input_contents", 7, "repeated bytes"),
    ),
    "ModelInferRequest.InferInputTensor": (
        ("name", 1, "string"),
        ("datatype", 2, "string"),
        ("shape", 3, "repeated int64"),
        ("parameters", 4, "map InferParameter"),
        ("contents", 5, "InferTensorContents"),
    ),
    "ModelInferRequest.InferRequestedOutputTensor": (
        ("name", 1, "string"),
        ("parameters", 2, "map InferParameter"),
    ),
    "ModelInferResponse": (
        ("model_name", 1, "string"),
        ("model_version", 2, "string"),
        ("id", 3, "string"),
        ("parameters", 4, "map InferParameter"),
        ("outputs", 5, "repeated ModelInferResponse.InferOutputTensor"),
        ("raw_output_contents", 6, "repeated bytes"),
    ),
    "ModelInferResponse.InferOutputTensor": (
        ("name", 1, "string"),
        ("datatype", 2, "string"),
        ("shape", 3, "repeated int64"),
        ("parameters", 4, "map InferParameter"),
        ("contents", 5, "InferTensorContents"),
    ),
    "ModelStreamInferResponse": (
        ("error_message", 1, "string"),
        ("infer_response", 2, "ModelInferResponse"),
    ),
    "ModelConfigRequest": (("name", 1, "string"), ("version", 2, "string")),
    "ModelConfigResponse": (("config", 1, "ModelConfig"),),
    "ModelConfig": (
        ("name", 1, "string"),
        ("platform", 2, "string"),
        ("backend", 17, "string"),
        ("version_policy", 3, "ModelVersionPolicy"),
        ("max_batch_size", 4, "int32"),
        ("input", 5, "repeated ModelInput"),
        ("output", 6, "repeated ModelOutput"),
        ("dynamic_batching", 11, "ModelDynamicBatching"),  # one of them (the oneof scheduling_choice)
        ("instance_group", 7, "repeated ModelInstanceGroup"),
        ("response_cache", 24, "ModelResponseCache"),
    ),
    "ModelResponseCache": (("enable", 1, "bool"),),
    "ModelVersionPolicy": (  # one of them (the oneof policy_choice)
        ("latest", 1, "ModelVersionPolicy.Latest"),
        ("all", 2, "ModelVersionPolicy.All"),
        ("specific", 3, "ModelVersionPolicy.Specific"),
    ),
    "ModelVersionPolicy.Latest": (("num_versions", 1, "uint32"),),
    "ModelVersionPolicy.All": (),
    "ModelVersionPolicy.Specific": (("versions", 1, "repeated int64"),),
    "ModelInput": (
        ("name", 1, "string"),
        ("data_type", 2, "enum DataType"),
        ("format", 3, "enum ModelInput.Format"),
        ("dims", 4, "repeated int64"),
        ("reshape", 5, "ModelTensorReshape"),
        ("optional", 8, "bool"),
    ),
    "ModelOutput": (
        ("name", 1, "string"),
        ("data_type", 2, "enum DataType"),
        ("dims", 3, "repeated int64"),
        ("reshape", 5, "ModelTensorReshape"),
        ("label_filename", 4, "string"),
    ),
    "ModelTensorReshape": (("shape", 1, "repeated int64"),),
    "ModelInstanceGroup": (
        ("name", 1, "string"),
        ("kind", 4, "enum ModelInstanceGroup.Kind"),
        ("count", 2, "int32"),
        ("gpus", 3, "repeated int32"),
    ),
    "ModelDynamicBatching": (
        ("preferred_batch_size", 1, "repeated int32"),
        ("max_queue_delay_microseconds", 2, "uint64"),
        ("preserve_ordering", 3, "bool"),
        ("priority_levels", 4, "uint64"),
        ("default_priority_level", 5, "uint64"),
        ("default_queue_policy", 6, "ModelQueuePolicy"),
    ),
    "ModelQueuePolicy": (
        ("timeout_action", 1, "enum ModelQueuePolicy.TimeoutAction"),
        ("default_timeout_microseconds", 2, "uint64"),
        ("allow_timeout_override", 3, "bool"),
        ("max_queue_size", 4, "uint32"),
    ),
    "ModelStatisticsRequest": (("name", 1, "string"), ("version", 2, "string")),
    "ModelStatisticsResponse": (("model_stats", 1, "repeated ModelStatistics"),),
    "ModelStatistics": (
        ("name", 1, "string"),
        ("version", 2, "string"),
        ("last_inference", 3, "uint64"),
        ("inference_count", 4, "uint64"),
        ("execution_count", 5, "uint64"),
        ("inference_stats", 6, "InferStatistics"),
        ("batch_stats", 7, "repeated InferBatchStatistics"),
    ),
    "InferStatistics": tuple(
        (name, number, "StatisticDuration")
        for number, name in enumerate(
            (
                "success",
                "fail",
                "queue",
                "compute_input",
                "compute_infer",
                "compute_output",
                "cache_hit",
                "cache_miss",
            ),
            start=1,
        )
    ),
    "StatisticDuration": (("count", 1, "uint64"), ("ns", 2, "uint64")),
    "InferBatchStatistics": (
        ("batch_size", 1, "uint64"),
        ("compute_input", 2, "StatisticDuration"),
        ("compute_infer", 3, "StatisticDuration"),
        ("compute_output", 4, "StatisticDuration"),
    ),
    "RepositoryIndexRequest": (("repository_name", 1, "string"), ("ready", 2, "bool")),
    "RepositoryIndexResponse": (("models", 1, "repeated RepositoryIndexResponse.ModelIndex"),),
    "RepositoryIndexResponse.ModelIndex": (
        ("name", 1, "string"),
        ("version", 2, "string"),
        ("state", 3, "string"),
        ("reason", 4, "string"),
    ),
    "ModelRepositoryParameter": (  # one of them (the oneof parameter_choice)
        ("bool_param", 1, "bool"),
        ("int64_param", 2, "int64"),
        ("string_param", 3, "string"),
        ("bytes_param", 4, "bytes"),
    ),
    "RepositoryModelLoadRequest": (
        ("repository_name", 1, "string"),
        ("model_name", 2, "string"),
        ("parameters", 3, "map ModelRepositoryParameter"),
    ),
    "RepositoryModelLoadResponse": (),
    "RepositoryModelUnloadRequest": (
        ("repository_name", 1, "string"),
        ("model_name", 2, "string"),
        ("parameters", 3, "map ModelRepositoryParameter"),
    ),
    "RepositoryModelUnloadResponse": (),
    "SystemSharedMemoryStatusRequest": (("name", 1, "string"),),
    "SystemSharedMemoryStatusResponse": (
        ("regions", 1, "map SystemSharedMemoryStatusResponse.RegionStatus"),
    ),
    "SystemSharedMemoryStatusResponse.RegionStatus": (
        ("name", 1, "string"),
        ("key", 2, "string"),
        ("offset", 3, "uint64"),
        ("byte_size", 4, "uint64"),
    ),
    "SystemSharedMemoryRegisterRequest": (
        ("name", 1, "string"),
        ("key", 2, "string"),
        ("offset", 3, "uint64"),
        ("byte_size", 4, "uint64"),
    ),
    "SystemSharedMemoryRegisterResponse": (),
    "SystemSharedMemoryUnregisterRequest": (("name", 1, "string"),),
    "SystemSharedMemoryUnregisterResponse": (),
    "CudaSharedMemoryStatusRequest": (("name", 1, "string"),),
    "CudaSharedMemoryStatusResponse": (("regions", 1, "map CudaSharedMemoryStatusResponse.RegionStatus"),),
    "CudaSharedMemoryStatusResponse.RegionStatus": (
        ("name", 1, "string"),
        ("device_id", 2, "uint64"),
        ("byte_size", 3, "uint64"),
    ),
    "CudaSharedMemoryRegisterRequest": (
        ("name", 1, "string"),
        ("raw_handle", 2, "bytes"),
        ("device_id", 3, "int64"),
        ("byte_size", 4, "uint64"),
    ),
    "CudaSharedMemoryRegisterResponse": (),
    "CudaSharedMemoryUnregisterRequest": (("name", 1, "string"),),
    "CudaSharedMemoryUnregisterResponse": (),
    "TraceSettingRequest": (
        ("settings", 1, "map TraceSettingRequest.SettingValue"),
        ("model_name", 2, "string"),
    ),
    "TraceSettingRequest.SettingValue": (("value", 1, "repeated string"),),
    "TraceSettingResponse": (("settings", 1, "map TraceSettingResponse.SettingValue"),),
    "TraceSettingResponse.SettingValue": (("value", 1, "repeated string"),),
    "LogSettingsRequest": (("settings", 1, "map LogSettingsRequest.SettingValue"),),
    "LogSettingsRequest.SettingValue": (  # one of them (the oneof parameter_choice)
        ("bool_param", 1, "bool"),
        ("uint32_param", 2, "uint32"),
        ("string_param", 3, "string"),
    ),
    "LogSettingsResponse": (("settings", 1, "map LogSettingsResponse.SettingValue"),),
    "LogSettingsResponse.SettingValue": (
        ("bool_param", 1, "bool"),
        ("uint32_param", 2, "uint32"),
        ("string_param", 3, "string"),
    ),
}
PARTIAL = frozenset(
    {
        "ModelConfig",
        "ModelInput",
        "ModelOutput",
        "ModelInstanceGroup",
        "ModelDynamicBatching",
        "ModelStatistics",
    }
)
# The oneofs: message -> (oneof, its fields).
ONEOFS: dict[str, tuple[str, tuple[str, ...]]] = {
    "InferParameter": ("parameter_choice", tuple(f[0] for f in MESSAGES["InferParameter"])),
    "ModelRepositoryParameter": (
        "parameter_choice",
        tuple(f[0] for f in MESSAGES["ModelRepositoryParameter"]),
    ),
    "ModelVersionPolicy": ("policy_choice", ("latest", "all", "specific")),
    "ModelConfig": ("scheduling_choice", ("dynamic_batching",)),
    "LogSettingsRequest.SettingValue": ("parameter_choice", ("bool_param", "uint32_param", "string_param")),
    "LogSettingsResponse.SettingValue": ("parameter_choice", ("bool_param", "uint32_param", "string_param")),
}
# The enums (a dotted name is nested in its message): their values' names and numbers.
ENUMS: dict[str, tuple[tuple[str, int], ...]] = {
    "DataType": tuple(
        (f"TYPE_{name}", number)
        for number, name in enumerate(
            (
                "INVALID",
                "BOOL",
                "UINT8",
                "UINT16",
                "UINT32",
                "UINT64",
                "INT8",
                "INT16",
                "INT32",
                "INT64",
                "FP16",
                "FP32",
                "FP64",
                "STRING",
                "BF16",
            )
        )
    ),
    "ModelInput.Format": (("FORMAT_NONE", 0), ("FORMAT_NHWC", 1), ("FORMAT_NCHW", 2)),
    "ModelInstanceGroup.Kind": (("KIND_AUTO", 0), ("KIND_GPU", 1), ("KIND_CPU", 2), ("KIND_MODEL", 3)),
    "ModelQueuePolicy.TimeoutAction": (("REJECT", 0), ("DELAY", 1)),
}

# The calls served: name -> (request message, response message); those in STREAMING take a stream of requests
# and give a stream of responses. Any other is answered UNIMPLEMENTED by gRPC itself.
METHODS = {
    "ServerLive": ("ServerLiveRequest", "ServerLiveResponse"),
    "ServerReady": ("ServerReadyRequest", "ServerReadyResponse"),
    "ModelReady": ("ModelReadyRequest", "ModelReadyResponse"),
    "ServerMetadata": ("ServerMetadataRequest", "ServerMetadataResponse"),
    "ModelMetadata": ("ModelMetadataRequest", "ModelMetadataResponse"),
    "ModelInfer": ("ModelInferRequest", "ModelInferResponse"),
    "ModelStreamInfer": ("ModelInferRequest", "ModelStreamInferResponse"),
    "ModelConfig": ("ModelConfigRequest", "ModelConfigResponse"),
    "ModelStatistics": ("ModelStatisticsRequest", "ModelStatisticsResponse"),
    "RepositoryIndex": ("RepositoryIndexRequest", "RepositoryIndexResponse"),
    "RepositoryModelLoad": ("RepositoryModelLoadRequest", "RepositoryModelLoadResponse"),
    "RepositoryModelUnload": ("RepositoryModelUnloadRequest", "RepositoryModelUnloadResponse"),
    "SystemSharedMemoryStatus": ("SystemSharedMemoryStatusRequest", "SystemSharedMemoryStatusResponse"),
    "SystemSharedMemoryRegister": (
        "SystemSharedMemoryRegisterRequest",
        "SystemSharedMemoryRegisterResponse",
    ),
    "SystemSharedMemoryUnregister": (
        "SystemSharedMemoryUnregisterRequest",
        "SystemSharedMemoryUnregisterResponse",
    ),
    "CudaSharedMemoryStatus": ("CudaSharedMemoryStatusRequest", "CudaSharedMemoryStatusResponse"),
    "CudaSharedMemoryRegister": ("CudaSharedMemoryRegisterRequest", "CudaSharedMemoryRegisterResponse"),
    "CudaSharedMemoryUnregister": ("CudaSharedMemoryUnregisterRequest", "CudaSharedMemoryUnregisterResponse"),
    "TraceSetting": ("TraceSettingRequest", "TraceSettingResponse"),
    "LogSettings": ("LogSettingsRequest", "LogSettingsResponse"),
}
STREAMING = frozenset({"ModelStreamInfer"})


def file_descriptor(
    name: str = "torchgate/grpc_service.proto",
    package: str = PACKAGE,
    messages: Mapping[str, tuple[tuple[str, int, str], ...]] = MESSAGES,
    services: Mapping[str, Mapping[str, tuple[str, str]]] | None = None,
    streaming: Mapping[str, tuple[bool, bool]] | None = None,
    oneofs: Mapping[str, tuple[str, tuple[str, ...]]] = ONEOFS,
    enums: Mapping[str, tuple[tuple[str, int], ...]] = ENUMS,
) -> descriptor_pb2.FileDescriptorProto:
    """Return the ``.proto`` file a table describes (by default this module's), as protobuf's own description
    of it: ``services`` maps each service's name to its calls, ``streaming`` a call to whether the client and
    the server stream."""
    if services is None:
        services = {SERVICE.rpartition(".")[2]: METHODS}
    if streaming is None:
        streaming = {method: (True, True) for method in STREAMING}
    proto = descriptor_pb2.FileDescriptorProto(name=name, package=package, syntax="proto3")
    built: dict[str, descriptor_pb2.DescriptorProto] = {}
    for full_name, fields in messages.items():  # parents come before their nested messages
        parent, _, short = full_name.rpartition(".")
        message = (built[parent].nested_type if parent else proto.message_type).add(name=short)
        built[full_name] = message
        oneof, members = oneofs.get(full_name, ("", ()))
        if oneof:
            message.oneof_decl.add(name=oneof)
        for field_name, number, kind in fields:
            field = message.field.add(name=field_name, number=number, json_name=_camel(field_name))
            repeated, _, kind = kind.rpartition(" ")
            if repeated == "enum":
                field.label, field.type = _F.LABEL_OPTIONAL, _F.TYPE_ENUM
                field.type_name = f".{package}.{kind}"
                continue
            if repeated == "map":
                entry = message.nested_type.add(name=_camel(field_name, upper=True) + "Entry")
                entry.options.map_entry = True
                entry.field.add(name="key", number=1, type=_F.TYPE_STRING, label=_F.LABEL_OPTIONAL)
                value = entry.field.add(name="value", number=2, label=_F.LABEL_OPTIONAL)
                entry.field[0].json_name, value.json_name = "key", "value"
                if kind in _SCALARS:
                    value.type = _SCALARS[kind]
                else:
                    value.type, value.type_name = _F.TYPE_MESSAGE, f".{package}.{kind}"
                kind, repeated = f"{full_name}.{entry.name}", "repeated"
            field.label = _F.LABEL_REPEATED if repeated else _F.LABEL_OPTIONAL
            if kind in _SCALARS:
                field.type = _SCALARS[kind]
            else:
                field.type, field.type_name = _F.TYPE_MESSAGE, f".{package}.{kind}"
            if field_name in members:
                field.oneof_index = 0
    for full_name, values in enums.items():
        parent, _, short = full_name.rpartition(".")
        enum = (built[parent].enum_type if parent else proto.enum_type).add(name=short)
        for value_name, number in values:
            enum.value.add(name=value_name, number=number)
    for service_name, methods in services.items():
        service = proto.service.add(name=service_name)
        for method, (request, response) in methods.items():
            client_streams, server_streams = streaming.get(method, (False, False))
            service.method.add(
                name=method,
                input_type=f".{package}.{request}",
                output_type=f".{package}.{response}",
                client_streaming=client_streams,
                server_streaming=server_streams,
            )
    return proto


def message_classes(
    proto: descriptor_pb2.FileDescriptorProto, names: Iterable[str]
) -> tuple[descriptor_pool.DescriptorPool, Any, dict[str, Any]]:
    """Add ``proto`` to a descriptor pool of its own; return the pool, the file's descriptor and the classes
    of the messages ``names`` (``"ModelInferRequest"``, ``"ModelMetadataResponse.TensorMetadata"``)."""
    pool = descriptor_pool.DescriptorPool()
    file = pool.Add(proto)
    find = pool.FindMessageTypeByName
    return (
        pool,
        file,
        {name: message_factory.GetMessageClass(find(f"{proto.package}.{name}")) for name in names},
    )


def _camel(name: str, upper: bool = False) -> str:
    words = name.split("_")
    head = words[0].capitalize() if upper else words[0]
    return head + "".join(w.capitalize() for w in words[1:])


POOL, FILE, CLASSES = message_classes(file_descriptor(), MESSAGES)


def message(kind: str, /, **fields: Any) -> Any:
    """Return a new message of ``kind`` (``"ModelInferResponse"``) with ``fields`` set."""
    return CLASSES[kind](**fields)
