"""Quality measures for trained models that need no torch: numpy all the way down."""
