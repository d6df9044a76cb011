"""The resilient client: its facade, link supervision, dispatcher and transport."""
