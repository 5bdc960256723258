from google.protobuf import descriptor_pb2 as _descriptor_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor
WRITE_FIELD_NUMBER: _ClassVar[int]
write: _descriptor.FieldDescriptor
COMMAND_FIELD_NUMBER: _ClassVar[int]
command: _descriptor.FieldDescriptor
ACCESS_FIELD_NUMBER: _ClassVar[int]
access: _descriptor.FieldDescriptor

class Access(_message.Message):
    __slots__ = ("domain", "verb", "resource", "port", "node", "any_node", "rule")
    DOMAIN_FIELD_NUMBER: _ClassVar[int]
    VERB_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_FIELD_NUMBER: _ClassVar[int]
    PORT_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    ANY_NODE_FIELD_NUMBER: _ClassVar[int]
    RULE_FIELD_NUMBER: _ClassVar[int]
    domain: str
    verb: str
    resource: str
    port: str
    node: str
    any_node: bool
    rule: str
    def __init__(self, domain: _Optional[str] = ..., verb: _Optional[str] = ..., resource: _Optional[str] = ..., port: _Optional[str] = ..., node: _Optional[str] = ..., any_node: _Optional[bool] = ..., rule: _Optional[str] = ...) -> None: ...
