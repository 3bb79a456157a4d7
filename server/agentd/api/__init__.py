"""gRPC servicers: convert between requests and the engine/storage, nothing more."""
