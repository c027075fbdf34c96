"""The page server and its client: serve lazarus images over TCP.

    protocol.py  the wire protocol, sans-IO (frames, handshake, events)
    wire.proto   its protobuf control messages (wire_pb2.py is generated)
    catalog.py   the images directory as the server sees it (names, files,
                 page indexes, uploads)
    server.py    the asyncio server (PageServer)
    client.py    the asyncio client library (PageClient, pull_image)
    cli.py       the `pageserver` command
"""
