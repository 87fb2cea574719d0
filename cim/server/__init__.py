"""The chat server: holds client streams, hands what they send to a route and
pushes what routes deliver."""
