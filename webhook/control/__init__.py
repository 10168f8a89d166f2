"""What the process decides with its state: the settings, the cluster state, the allocator and
the claimer. Asynchronous, but I/O only through the store it is given (a protocol); imports
``core`` only."""
