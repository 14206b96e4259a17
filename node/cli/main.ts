#!/usr/bin/env node
// Entry point of the `novacron` CLI. The polyfill import must stay first (libp2p 3 on Node 20).
import '../polyfill.js';
import { runCli } from './program.js';

process.exitCode = await runCli(process.argv.slice(2));
