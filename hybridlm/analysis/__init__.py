"""Cost models: parameters, bytes and (later) FLOPs predicted from a config, checked against reality by tests."""
