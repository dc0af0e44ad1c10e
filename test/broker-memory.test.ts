/** The Broker conformance suite against the in-process broker (one node). */
import type { Broker } from '../src/broker/broker.js';
import { MemoryBroker } from '../src/broker/memory.js';
import { brokerSuite } from './broker-suite.js';

brokerSuite('memory', async () => {
  // One process is one node: every "node" of a deployment is the same broker.
  const deployments = new Map<string, Broker>();
  return {
    async node(deployment = 'a') {
      let broker = deployments.get(deployment);
      if (!broker) {
        broker = new MemoryBroker();
        deployments.set(deployment, broker);
      }
      return broker;
    },
    async cleanup() {
      await Promise.all([...deployments.values()].map((b) => b.close()));
    },
  };
});
