"""`headattr methods`: every method measured on one model (methods.md/.json, methods.png)."""
