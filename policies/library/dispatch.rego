# Dispatch to the tool policies of the library (policies/library/*/policy.rego).
#
# A sandbox labelled tool=<name> with <name> below is decided by that tool's
# package alone: default.rego's own allow rules and errno step aside
# (`tool_selected`), its deny rules (credentials, /etc/shadow, .env files,
# the metadata endpoint, servers) still hold. Any other sandbox, labelled or
# not, keeps the default policy.
#
# Each tool is referenced statically (no data.cordon.library[name] lookup),
# so the policy compiles for the VM.
package cordon

import rego.v1

library_tools := {"python-codegen", "web-fetch", "coding-agent", "shell-readonly"}

# The label names a tool of the library.
tool_selected if input.sandbox.labels.tool in library_tools

# --- python-codegen ----------------------------------------------------------

allow if {
	input.sandbox.labels.tool == "python-codegen"
	data.cordon.library.python_codegen.allow
}

deny contains msg if {
	input.sandbox.labels.tool == "python-codegen"
	some msg in data.cordon.library.python_codegen.deny
}

# --- web-fetch ---------------------------------------------------------------

allow if {
	input.sandbox.labels.tool == "web-fetch"
	data.cordon.library.web_fetch.allow
}

deny contains msg if {
	input.sandbox.labels.tool == "web-fetch"
	some msg in data.cordon.library.web_fetch.deny
}

# --- coding-agent ------------------------------------------------------------

allow if {
	input.sandbox.labels.tool == "coding-agent"
	data.cordon.library.coding_agent.allow
}

deny contains msg if {
	input.sandbox.labels.tool == "coding-agent"
	some msg in data.cordon.library.coding_agent.deny
}

# --- shell-readonly ----------------------------------------------------------

allow if {
	input.sandbox.labels.tool == "shell-readonly"
	data.cordon.library.shell_readonly.allow
}

deny contains msg if {
	input.sandbox.labels.tool == "shell-readonly"
	some msg in data.cordon.library.shell_readonly.deny
}

# --- errno -------------------------------------------------------------------

# The selected tool's errno, which default.rego's errno gives when a tool is
# selected. One rule, its tools chained with `else` (they cannot both hold):
# two definitions with different values would make Cordon evaluate the policy
# in the interpreter (the compiled VM does not fail such a conflict as OPA
# does).
tool_errno := e if {
	input.sandbox.labels.tool == "python-codegen"
	e := data.cordon.library.python_codegen.errno
} else := e if {
	input.sandbox.labels.tool == "web-fetch"
	e := data.cordon.library.web_fetch.errno
} else := e if {
	input.sandbox.labels.tool == "coding-agent"
	e := data.cordon.library.coding_agent.errno
} else := e if {
	input.sandbox.labels.tool == "shell-readonly"
	e := data.cordon.library.shell_readonly.errno
}
