"""The transcoding ladder: decode the source once with PyAV, scale and encode each rung in
worker threads, and hand the packets to the same HLS packager as the source."""
