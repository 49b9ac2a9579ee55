"""The course's online shop (chapters 10 and 13): its event contracts, and the services built on them."""
