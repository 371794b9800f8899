"""The gateway side of local models: workers' supervisor and client, the fair queue in
front of each, prompt templating and tokenizing, model assets."""
