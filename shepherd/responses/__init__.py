"""The Responses API executed by the gateway: requests become Chat Completions model calls, answers
become Response objects and their event streams, and both are kept in the chat history store."""
