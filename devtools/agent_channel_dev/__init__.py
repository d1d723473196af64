"""Development tools of agent-channel, never deployed: the local stack, the command
line, the reference agent client and the test instruments."""
