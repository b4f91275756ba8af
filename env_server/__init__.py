"""Desktop environment server: simulated (and real) desktops behind dm_env_rpc and a batched gRPC API."""
