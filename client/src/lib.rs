//! raftkv client library: leader discovery, retries, sessions and typed errors over the gRPC API.
