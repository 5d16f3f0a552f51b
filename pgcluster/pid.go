package pgcluster

// Pid is the postmaster's process ID, 0 when the server is not running.
// Every backend is its child, so the process tree rooted here is all the
// CPU the server spends.
func (c *Cluster) Pid() int {
	if c.cmd == nil || c.cmd.Process == nil {
		return 0
	}
	return c.cmd.Process.Pid
}
