"""One module per wire. Each takes a Subscription from the hub and writes it."""
