"""Server-side tools: what a turn (or response) runs itself when the model calls them."""
