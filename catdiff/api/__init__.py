"""What a plugin uses: the Method and Task interfaces, Setting, the hooks and their markers,
RunContext, the named random streams and the errors users see (docs/plugins.md).

``from catdiff import Method, Task, Setting, hookimpl`` is the short form; none imports torch."""
