#!/usr/bin/env node
// The `charla` command; `npm install` builds dist/ (the `prepare` script).
import '../dist/src/cli.js';
