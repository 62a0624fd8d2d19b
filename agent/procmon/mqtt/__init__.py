"""The agent's own MQTT 3.1.1/5 publisher, in one place.

- ``wire``: the codec, pure functions on bytes;
- ``session``: the sans-IO protocol state (CONNACK limits, packet ids, in-flight window,
  rewind on loss, the broker's own PUBLISH acknowledged and discarded);
- ``conn``: reaching the broker (TCP, TLS, the CONNECT/CONNACK handshake) and a Link's I/O;
- ``connector``: which broker (failover), which protocol version (one 3.1.1 fallback), which
  will the broker takes, each failure as one line;
- ``broker_url``: broker URLs, credentials and TLS files, validated up front;
- ``check``: ``procmon check --broker``, with the same client.

The sink (``procmon.sinks.mqtt``) keeps only the glue: its thread, the spool, the counters.
"""
