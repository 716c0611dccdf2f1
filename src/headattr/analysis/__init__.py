"""Analysis of finished runs: how consistent, reliable and complete their scores are (`headattr compare`)."""
