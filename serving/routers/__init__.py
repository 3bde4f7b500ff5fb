"""One router per resource; each handler translates a request into one store or model call."""
