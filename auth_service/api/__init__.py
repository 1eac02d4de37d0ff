"""The only gRPC code of the service: the servicer (short translators from requests to use
cases and back), the interceptor (callers, roles, metrics), protobuf conversions, reflection,
and the error table that turns each domain error into a status with ErrorInfo."""
