"""The optimum integration: `optimum-cli export mtp-edge` (cli, found through register/) and MtpEdgeModelForCausalLM (model)."""
